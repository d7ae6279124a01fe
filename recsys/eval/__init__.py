"""The nine-task evaluation: task builders (tasks), baselines, the harness and reports."""
