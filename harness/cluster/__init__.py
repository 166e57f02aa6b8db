"""Placing a run on a cluster's scheduler: Slurm today.

The scheduler only places the run; the harness's own path stays the engine. ``slowrun run --slurm`` prepares
the run folder where it is called (on a file system the compute nodes share), writes an ``sbatch`` script
into it and submits it; the job runs :mod:`harness.cluster.job`, which trains the run, or resumes it when it
was started before (a requeue after pre-emption or a node failure), meter and training clock continuing.

Who may import it: the CLI only (``slowrun run --slurm``, ``status``, ``cancel``); the job body runs as its
own process. Harness-side code: nothing here runs beside the method, and it imports the runner, never
confined code."""
