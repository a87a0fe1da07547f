"""Pictures of the system: the kissing configuration in 3-D (geometry.py) and the sphere
hierarchy drawn radially (graph.py). matplotlib object API only, so figures draw from any
thread with the Agg backend."""
