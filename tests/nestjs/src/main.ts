// The scenario the test runs against a live worker; prints one line `RESULT {json}`.
import 'reflect-metadata';
import { NestFactory } from '@nestjs/core';
import {
  ClientProxy,
  MicroserviceOptions,
  RmqRecordBuilder,
  Transport,
} from '@nestjs/microservices';
import amqplib from 'amqplib';
import { firstValueFrom, timeout } from 'rxjs';
import { AppModule, BILLING_URL } from './billing.module.js';
import { waitFor } from './seen.js';

const BILLING_USER = process.env.BILLING_BROKER_USER ?? 'guest';
const ORDERS_USER = process.env.ORDERS_BROKER_USER ?? BILLING_USER;
const EVENTS_QUEUE = process.env.EVENTS_QUEUE ?? 'storefront.billing-events';
const RUN = process.env.RUN ?? `${Date.now()}`;

interface DepositResult {
  transaction: { id: string; status: string; amount: { amount: string; currency: string } };
  payment_action: { type: string; client_secret?: string; confirmation_url?: string } | null;
}

// A refusal: what send() rejects with (the reply's `err`).
export interface BillingError {
  code: string; // insufficient_funds, invalid_message, forbidden, ...
  message: string;
  details: Record<string, unknown>;
}

// With the access policy on, every message names the broker user it is sent as
// (RabbitMQ refuses any other user id; the worker checks what that user may send).
function asUser(data: object, userId = BILLING_USER) {
  return new RmqRecordBuilder(data).setOptions({ userId }).build();
}

function call<R>(client: ClientProxy, queue: string, command: object): Promise<R> {
  return firstValueFrom(client.send<R>(queue, asUser(command)).pipe(timeout(30_000)));
}

async function refusalOf(reply: Promise<unknown>): Promise<BillingError> {
  try {
    throw new Error(`expected a refusal, got ${JSON.stringify(await reply)}`);
  } catch (refusal) {
    if (refusal instanceof Error && refusal.message.startsWith('expected a refusal')) {
      throw refusal;
    }
    return refusal as BillingError;
  }
}

async function bindEvents(types: string[]) {
  // A durable queue of your own on billing.events, bound to the types you handle.
  const connection = await amqplib.connect(BILLING_URL);
  const channel = await connection.createChannel();
  await channel.assertQueue(EVENTS_QUEUE, { durable: true });
  for (const type of types) {
    await channel.bindQueue(EVENTS_QUEUE, 'billing.events', type);
  }
  await connection.close();
}

async function main() {
  await bindEvents(['payment.success', 'invoice.created']);
  const app = await NestFactory.createMicroservice<MicroserviceOptions>(AppModule, {
    transport: Transport.RMQ,
    options: {
      urls: [BILLING_URL],
      queue: EVENTS_QUEUE,
      noAssert: true, // declared and bound by bindEvents
      noAck: false, // the handlers ack after handling: at-least-once
    },
    logger: ['error', 'warn'],
  });
  await app.listen();
  const billing = app.get<ClientProxy>('BILLING');
  const balances = app.get<ClientProxy>('BILLING_BALANCE');
  const orders = app.get<ClientProxy>('ORDERS');
  const user = `nest-${RUN}`;
  const result: Record<string, unknown> = { user };

  const deposit = {
    idempotency_key: `deposit-${RUN}`, // a retry reuses it: same reply, nothing twice
    user_id: user,
    amount: { amount: '25.00', currency: 'USD' },
  };
  const first = await call<DepositResult>(billing, 'billing.wallet.deposit', deposit);
  const again = await call<DepositResult>(billing, 'billing.wallet.deposit', deposit);
  // again.transaction.id === first.transaction.id: the same deposit, made once
  result.deposit = first;
  result.repeated = again;
  const id = first.transaction.id;
  result.payment = await waitFor<{ transaction_id: string }>('payment.success', (p) => p.transaction_id === id);
  result.balance = await call(balances, 'billing.wallet.balance', { user_id: user });

  try {
    await call(billing, 'billing.wallet.withdraw', {
      idempotency_key: `withdraw-${RUN}`,
      user_id: user,
      amount: { amount: '100.00', currency: 'USD' },
      description: 'Pro plan',
    });
  } catch (refusal) {
    const { code, details } = refusal as BillingError; // code: 'insufficient_funds'
    result.withdrawal = { code, details };
  }
  result.invalid = await refusalOf(call(billing, 'billing.wallet.deposit', { user_id: user }));
  result.wrongPattern = await refusalOf(call(balances, 'billing.wallet.withdraw', { user_id: user }));
  result.forbidden = await refusalOf(
    call(billing, 'billing.plan.upsert', {
      idempotency_key: `plan-${RUN}`,
      code: `plan-${RUN}`,
      name: 'Pro',
      interval: 'month',
      price: { amount: '9.00', currency: 'USD' },
    }),
  );

  const order = {
    order_id: `order-${RUN}`,
    user_id: user,
    currency: 'USD',
    items: [{ description: 'Blue mug', quantity: 2, unit_price: { amount: '4.50', currency: 'USD' } }],
  };
  const invoiced = waitFor<{ order_id: string }>('invoice.created', (i) => i.order_id === order.order_id);
  await firstValueFrom(orders.emit('order.created', asUser(order, ORDERS_USER)));
  await firstValueFrom(orders.emit('order.created', asUser(order, ORDERS_USER))); // a duplicate
  result.invoice = await invoiced;
  result.invoices = await call(billing, 'billing.invoice.get', { user_id: user });

  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
  await app.close();
  await Promise.all([billing.close(), balances.close(), orders.close()]);
}

main().then(
  () => process.exit(0),
  (error) => {
    process.stderr.write(`FAILED ${error instanceof Error ? error.stack : JSON.stringify(error)}\n`);
    process.exit(1);
  },
);
