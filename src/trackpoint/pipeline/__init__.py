"""The request pipeline behind the edge: fields, event building, routing."""
