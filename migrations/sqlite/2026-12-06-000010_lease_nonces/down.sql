DROP TABLE lease_nonces;
