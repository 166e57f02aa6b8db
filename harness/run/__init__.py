"""A run from start to record: ``runner`` (prepare the run folder, start the data server and the supervised
method processes, evaluate; resume; re-evaluate), ``record`` (the record, assembled in one place), ``entry_check`` (`slowrun check`, the
entry imported in a sandboxed child), ``reverify`` (`leaderboard add --verify`), ``calibrate`` (the small
tracks' reference curves), ``demo`` (`slowrun demo`) and ``tracking`` (W&B and TensorBoard, optional).

Who may import it: the CLI, the cluster job, the leaderboard and studies. It is the top of the harness's
side and imports everything below it except confined code, which it only starts as processes."""
