"""The backplane over a real redis-server: in one process and across processes."""
