import { Module } from '@nestjs/common';
import { ClientsModule, Transport } from '@nestjs/microservices';
import { BillingEvents } from './billing.events.js';

export const BILLING_URL = process.env.BILLING_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672/';
export const ORDERS_URL = process.env.ORDERS_AMQP_URL ?? BILLING_URL;

@Module({
  imports: [
    ClientsModule.register([
      {
        // Every command and query over one connection: send('<queue name>', command).
        name: 'BILLING',
        transport: Transport.RMQ,
        options: {
          urls: [BILLING_URL],
          exchange: 'billing.commands', // every command/query queue is bound by its name
          wildcards: true, // publish to the exchange with routing key = pattern
          persistent: true, // the worker's queues are durable: so are your commands
        },
      },
      {
        // One queue through the default exchange: nothing to declare.
        name: 'BILLING_BALANCE',
        transport: Transport.RMQ,
        options: {
          urls: [BILLING_URL],
          queue: 'billing.wallet.balance',
          noAssert: true, // the worker declares its queues (with arguments of its own)
          persistent: true,
        },
      },
      {
        // order.created to the Orders service's topic exchange.
        name: 'ORDERS',
        transport: Transport.RMQ,
        options: { urls: [ORDERS_URL], exchange: 'orders', wildcards: true, persistent: true },
      },
    ]),
  ],
  controllers: [BillingEvents],
})
export class AppModule {}
