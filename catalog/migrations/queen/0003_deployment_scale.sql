-- Deployments scale between min_replicas and max_replicas with the front
-- door's queue. Rows from before read as min = max = replicas (0 here);
-- replicas keeps the minimum for a queen of the previous version.
ALTER TABLE deployments ADD COLUMN min_replicas INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deployments ADD COLUMN max_replicas INTEGER NOT NULL DEFAULT 0;
