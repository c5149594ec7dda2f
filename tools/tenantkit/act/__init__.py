"""Act: the only layer that touches Docker, PostgreSQL and the file system."""
