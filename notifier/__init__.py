"""Turns user events into emails sent through Postmark, once each, never to a suppressed
address; hears back from Postmark through its webhooks."""
