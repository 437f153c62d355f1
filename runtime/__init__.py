"""The runtime: the engine that moves messages between stateful functions.

It takes messages in (HTTP ingress), routes each one to its address over a
partitioned log (an embedded durable log, or Kafka), calls the function endpoints
over HTTP with the address's state attached, applies the state changes they return
and routes what they send. It imports the contract (``statefun``) and never the SDK.
"""
