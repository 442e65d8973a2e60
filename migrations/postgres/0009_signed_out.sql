-- When every browser session of a user was ended at once (`gatehouse tokens revoke --user`):
-- sessions that signed in before it no longer count as signed in, like those from before a
-- password change. NULL: never.
ALTER TABLE users ADD COLUMN signed_out_at BIGINT;
