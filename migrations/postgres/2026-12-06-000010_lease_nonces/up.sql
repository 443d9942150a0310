-- Each signed lease or renew body carries a nonce; one seen within the last minutes is a
-- replay of a copied body, refused. Kept in the database so that every server process sharing
-- it refuses the same replays; swept after the freshness window has passed.
CREATE TABLE lease_nonces (
    builder_id BIGINT NOT NULL REFERENCES builders (id) ON DELETE CASCADE,
    nonce      TEXT NOT NULL,
    seen_at    TIMESTAMP NOT NULL,
    PRIMARY KEY (builder_id, nonce)
);
CREATE INDEX lease_nonces_seen_at ON lease_nonces (seen_at);
