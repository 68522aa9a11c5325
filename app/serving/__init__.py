"""The HTTP plumbing that the worker and the web app share: ASGI hooks, JSON responses, error bodies, gzip, the
request log and the process's memory settings; knows nothing of torch, models or storage."""
