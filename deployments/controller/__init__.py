"""Host of the session controller: the `FeatureController` actor and its HTTP routes."""
