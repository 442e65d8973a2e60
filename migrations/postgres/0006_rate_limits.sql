-- Request budgets shared by every instance (the per-token limit of /mcp when several instances
-- share this database). One row per key: the theoretical arrival time of the generic cell rate
-- algorithm, in microseconds since the epoch. A row whose time has passed is a full budget and
-- may be deleted.
CREATE TABLE rate_limits (
    key TEXT PRIMARY KEY,
    tat BIGINT NOT NULL
);
