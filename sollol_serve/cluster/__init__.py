"""The shared node state: what each node has and whether it is up (with its circuit breaker),
and what was learned of its speed and capacity; one named actor holds it for the whole app."""
