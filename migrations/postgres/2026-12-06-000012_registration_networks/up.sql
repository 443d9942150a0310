-- The network (IPv4 /24, IPv6 /64) a self-registration came from: a few addresses may not fill
-- a project's queue of pending registrations, and when it is full the network holding most of
-- it gives way to a newcomer.
ALTER TABLE builders ADD COLUMN registered_from TEXT;
