-- The sealed response of a code exchange (what a repeated POST of the same code gets back within
-- its window), in a table of its own, one row per grant a code created, appended by the exchange's
-- transaction. Kept on the code's row, it grew that row by about 1.2 KB long after it was
-- written, splitting its page when it no longer fitted (BENCHMARKS.md, token endpoint, item 10).
-- Not on the grant's row either, which every refresh reads: grants stay small.
-- authorization_codes.replay_response stays for codes consumed before this migration, and is
-- read when there is no row here.
CREATE TABLE code_responses (
    grant_id TEXT PRIMARY KEY NOT NULL REFERENCES grants (grant_id) ON DELETE CASCADE,
    response TEXT NOT NULL
);
