"""Dependencies: prompt templates, vault artifacts and vector matches that a
service declares and the worker fetches into the attempt's working directory
before it starts."""
