-- The redirect URI a consent was given for. A public client cannot prove who it is (RFC 8252
-- §8.6, RFC 6749 §10.2), so its remembered consent applies only to that same redirect URI: a
-- loopback redirect on another port asks the person again. NULL (consents given before): asks
-- again once.
ALTER TABLE consents ADD COLUMN redirect_uri TEXT;
