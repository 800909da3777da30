"""The event backbone: a durable partitioned log (Kafka or local) and a non-blocking publisher."""
