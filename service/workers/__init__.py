"""Worker processes: `cnnserve serve --workers N`. The supervisor (supervisor) that starts,
replaces and stops the workers, its control and metrics servers (control) and what they
merge (merge); the link a worker is started with (link) and the worker's side of the fleet
(fleet_client). The top layer: may import the server and everything below it (the
supervisor itself imports only configuration, link, control and merge, so it carries no
model runtime)."""
