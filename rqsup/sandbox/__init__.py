"""Code that runs inside a child process: no asyncio, no redis (the supervisor issue)."""
