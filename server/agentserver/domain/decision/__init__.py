"""Decision: engines propose, policy disposes."""
