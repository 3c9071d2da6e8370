"""Ray at the edge of ltray: the only modules that import Ray, a general executor that knows nothing of
ensembles, sweeps or commands. `engine` (an embedded or joined cluster, data in the object store, the trajectory
store, pure functions as tasks and their bounded fan-out), `search` (one pure function per configuration as Ray
Tune trials), `reaper` (the watchdog that stops an embedded Ray when its driver dies) and `cluster_yaml` (a
`ray up` YAML checked offline with Ray's own checks). The commands that use them live in ltray.cli."""
