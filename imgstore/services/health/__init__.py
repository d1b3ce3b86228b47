"""Is a storage reachable: pings, reconnects, the tracker and its pinger child."""
