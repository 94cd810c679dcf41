// `using` (explicit resource management, lib `esnext`): the handles are disposable.
import { Client } from "super-scaled-sockets";

export async function scoped(url: string): Promise<void> {
  using client = await Client.connect(url);
  using room = await client.subscribe("room:lobby");
  console.log(client.status, room.channel);
}
