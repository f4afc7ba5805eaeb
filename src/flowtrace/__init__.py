"""flowtrace."""
