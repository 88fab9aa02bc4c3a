"""RabbitMQ: topology, subscribers, the error policy and the outbox publisher."""
