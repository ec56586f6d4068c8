-- The brain's SQLite store, schema 5: whether a webhook was registered through LIB v1.1's shared
-- secret (a LIB v1.1 listener, which checks `x-webhook-secret`) rather than a device token. With
-- `--webhook-legacy-secret-header` the brain sends that header to these webhooks only: a device
-- token's webhook secret is an HMAC key and never travels. The same column as
-- migrations/brain/postgres/0005_webhook_origin.sql.
ALTER TABLE device_webhooks ADD COLUMN via_shared_secret INTEGER NOT NULL DEFAULT 0;
