"""The API's routers: graphs (and the schema), jobs, health."""
