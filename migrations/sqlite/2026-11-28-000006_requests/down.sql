DROP TABLE leases;
DROP TABLE build_requests;
