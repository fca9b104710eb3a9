"""The backplane over a real Redis Cluster: six nodes, three masters, a replica each."""
