"""The web app's services, one module per resource (features, explorer, steering, discovery, models, builds): each
route calls one of their keyword-only functions; they call the store and the deployment's workers, and know nothing
of HTTP beyond raising NotFound/Invalid (errors.py) with a message for the user, and nothing of torch."""
