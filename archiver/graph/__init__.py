"""Fetching from Microsoft Graph: the client that pages a log function (`client`), the
app-only tokens it sends (`auth`), and the pacing that keeps it under Graph's limits
(`ratelimit`). Import from the module that does the job."""
