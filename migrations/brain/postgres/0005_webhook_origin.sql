-- Schema 5: whether a webhook was registered through LIB v1.1's shared secret (a LIB v1.1
-- listener, which checks `x-webhook-secret`) rather than a device token. With
-- `--webhook-legacy-secret-header` the brain sends that header to these webhooks only: a device
-- token's webhook secret is an HMAC key and never travels.
ALTER TABLE lib_shared.device_webhooks
    ADD COLUMN IF NOT EXISTS via_shared_secret boolean NOT NULL DEFAULT false;
