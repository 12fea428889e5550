"""The DVC/papermill glue: notebook runner, the run's problem and its artifacts, I/O, report tables, plotting. Nothing imports this subpackage."""
