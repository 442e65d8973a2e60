-- The sealed response of a code exchange (what a repeated POST of the same code gets back within
-- its window) is kept with the grant the exchange creates, in the row appended by the same
-- transaction. Kept on the code's row, it grew that row by about 1.2 KB long after it was
-- written, splitting its page when it no longer fitted: exchanges ran 12-15% slower
-- (BENCHMARKS.md). authorization_codes.replay_response stays for codes consumed before this
-- migration, and is read when the grant has none.
ALTER TABLE grants ADD COLUMN code_response TEXT;
