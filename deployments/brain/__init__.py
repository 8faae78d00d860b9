"""Host of the brain: the `Brain` deployment (Heart Flow, memory, the autonomous engine) and its routes."""
