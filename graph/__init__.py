"""Plain-Python stage logic for Miku's voice graph and brain.

Nothing in this package imports Ray: every stage here is tested and benchmarked in-process, and
`deployments/` hosts it on Ray Serve.
"""
