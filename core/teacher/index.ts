/**
 * core/teacher: training a teacher from scratch on a corpus with the training recipe, resumably, and
 * telling whether a checkpoint directory holds a finished teacher. `offshoot teacher train`, `offshoot
 * run`, the paper-table experiment and the pretraining worker's prepareTeacher activity all train the
 * teacher through `trainTeacher`, in their own process.
 */
export {
  TEACHER_TRAIN_DEFAULTS,
  type TeacherStepReport,
  type TeacherTrainHooks,
  type TeacherTrainOptions,
  type TeacherTrainResult,
  type TeacherTrainSettings,
  teacherFinished,
  trainTeacher,
} from './train.js';
