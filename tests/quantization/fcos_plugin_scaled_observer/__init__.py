"""A test plugin that adds one activation observer (``scaled_absmax``): the observer module
and its registration, nothing else -- the same two files a backbone plugin touches."""
