-- The job-queue clients of the live processes. Each process's River client
-- records here, every few seconds, that it is alive; it removes its row when
-- it stops gracefully. A job left running by a client whose row is gone or
-- has stopped being refreshed was held by a process that died (SIGKILL, a
-- lost host): any process makes it available again within seconds, instead
-- of River's RescueStuckJobsAfter of minutes (provisioner/heartbeat.go).
CREATE TABLE job_clients (
    id           text PRIMARY KEY,                   -- the River client's ID (river.Config.ID)
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()  -- the catalog's clock, never the process's
);
