/**
 * The "Train this cell with WML…" dialog: the options `%%wml train` takes, as a form.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { FormError, TrainForm, trainRequest } from './format';
import { FRAMEWORKS, MODES, TrainRequest } from './model';

/** One input of the form: its field, label, help text and how to make it. */
interface FieldSpec {
  field: keyof TrainForm;
  label: string;
  help: string;
  make: () => HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement;
}

function input(type: string, extra: Partial<HTMLInputElement> = {}): HTMLInputElement {
  const node = document.createElement('input');
  Object.assign(node, { type, ...extra });
  return node;
}

function select(options: readonly string[]): HTMLSelectElement {
  const node = document.createElement('select');
  for (const option of options) {
    node.append(new Option(option, option));
  }
  return node;
}

function textarea(placeholder: string): HTMLTextAreaElement {
  const node = document.createElement('textarea');
  Object.assign(node, { placeholder, rows: 3 });
  return node;
}

/** The dialog body: labelled inputs, read back as a `TrainForm`. */
export class TrainFormWidget extends Widget implements Dialog.IBodyWidget<TrainForm> {
  /** Create the form filled with `values`, showing `error` if a previous try had one. */
  constructor(values: TrainForm, error = '') {
    super();
    this.addClass('jp-wml-TrainForm');
    const specs: FieldSpec[] = [
      { field: 'name', label: 'Name', help: 'experiment name', make: () => input('text') },
      { field: 'gpus', label: 'GPUs', help: 'per run', make: () => input('number', { min: '0' }) },
      { field: 'framework', label: 'Framework', help: 'image family', make: () => select(FRAMEWORKS) },
      { field: 'data', label: 'Data bucket', help: 'optional: DATA_DIR in the run', make: () => input('text', { placeholder: 'e.g. digits' }) },
      { field: 'sweep', label: 'Sweep', help: 'optional: NAME=SPEC per line', make: () => textarea('lr=loguniform(1e-4,1e-1)') },
      { field: 'runs', label: 'Runs', help: 'optional: runs of the search', make: () => input('number', { min: '1' }) },
      { field: 'metric', label: 'Metric', help: 'optional: ranks the runs, as logged', make: () => input('text', { placeholder: 'e.g. val_acc' }) },
      { field: 'mode', label: 'Mode', help: 'larger (max) or smaller (min) is better', make: () => select(MODES) }
    ];
    for (const spec of specs) {
      this.node.append(this.row(spec, values[spec.field]));
    }
    const message = document.createElement('div');
    message.className = 'jp-wml-TrainForm-error';
    message.setAttribute('role', 'alert');
    message.textContent = error;
    this.node.append(message);
  }

  /** The form's values as text. */
  getValue(): TrainForm {
    const value = {} as TrainForm;
    for (const [field, node] of this.inputs) {
      value[field] = node.value;
    }
    return value;
  }

  private row(spec: FieldSpec, value: string): HTMLLabelElement {
    const label = document.createElement('label');
    label.className = 'jp-wml-TrainForm-row';
    const control = spec.make();
    control.classList.add('jp-mod-styled');
    control.name = spec.field;
    control.value = value;
    this.inputs.set(spec.field, control);
    const caption = document.createElement('span');
    caption.textContent = spec.label;
    const help = document.createElement('small');
    help.textContent = spec.help;
    label.append(caption, control, help);
    return label;
  }

  private readonly inputs = new Map<keyof TrainForm, HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement>();
}

/**
 * Ask for the options, starting from `start`, and return the request to submit `code` with, or
 * null if cancelled. A form error reopens the dialog with the message and the values kept.
 */
export async function askTrainOptions(code: string, start: TrainForm): Promise<TrainRequest | null> {
  let values = start;
  let problem = '';
  for (;;) {
    const result = await showDialog({
      title: 'Train this cell with WML',
      body: new TrainFormWidget(values, problem),
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Train' })],
      focusNodeSelector: 'input'
    });
    if (!result.button.accept || !result.value) {
      return null;
    }
    values = result.value;
    try {
      return trainRequest(values, code);
    } catch (error) {
      if (!(error instanceof FormError)) {
        throw error;
      }
      problem = error.message;
    }
  }
}
