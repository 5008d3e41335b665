"""What runs the loops: the scheduler, the leader lease and its fence, claiming due rows."""
