# Container targets (docker compose). Owned by the compose work; included by the Makefile.
