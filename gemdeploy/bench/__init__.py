"""`gemdeploy bench`: accuracy, latency and size of each run's artifacts on each available backend."""
