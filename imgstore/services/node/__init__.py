"""What one node is: runtime resources, handles, jobs, locks, leases, accounts and sessions, membership."""
