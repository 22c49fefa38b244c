"""Logic shared by the `webhook_ingest` and `event_processor` Azure Functions."""
