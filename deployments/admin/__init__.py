"""The admin panel under `/admin` on the ingress: login, live overview, and the panel's sections."""
