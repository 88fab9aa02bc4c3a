// Preload (`node --import`): any attempt to open a network connection or fetch throws,
// so a step run with it provably needs no network.
import net from "node:net";

const refuse = () => {
  throw new Error("network access attempted while rendering offline");
};
net.Socket.prototype.connect = refuse;
globalThis.fetch = refuse;
