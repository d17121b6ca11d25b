"""Programs the multi-process tests of shared PostgreSQL storage start as processes."""
