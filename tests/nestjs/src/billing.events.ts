import { Controller } from '@nestjs/common';
import { Ctx, EventPattern, Payload, RmqContext } from '@nestjs/microservices';
import { seen } from './seen.js';

interface PaymentSuccess {
  transaction_id: string;
  user_id: string;
  amount: { amount: string; currency: string };
}

interface InvoiceCreated {
  invoice_id: string;
  order_id: string | null;
  user_id: string;
}

// <string>: Nest 12's typed-events overload of @EventPattern would refuse the @Ctx() parameter.
@Controller()
export class BillingEvents {
  @EventPattern<string>('payment.success') // matches the envelope's `pattern` (= `type`)
  paymentSucceeded(@Payload() payment: PaymentSuccess, @Ctx() context: RmqContext) {
    const eventId = context.getMessage().properties.messageId; // = event_id: dedupe on it
    seen.emit('payment.success', { eventId, ...payment });
    context.getChannelRef().ack(context.getMessage()); // noAck: false, ack once handled
  }

  @EventPattern<string>('invoice.created')
  invoiceCreated(@Payload() invoice: InvoiceCreated, @Ctx() context: RmqContext) {
    const eventId = context.getMessage().properties.messageId;
    seen.emit('invoice.created', { eventId, ...invoice });
    context.getChannelRef().ack(context.getMessage());
  }
}
